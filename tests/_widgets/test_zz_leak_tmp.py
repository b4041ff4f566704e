import gc, sys
sys.path.insert(0, "/work/main/tests/_widgets")
from test_batch_widget import *  # noqa

def test_leak(make_napari_viewer_proxy, files, tmp_path, qtbot, monkeypatch):
    import os
    viewer = make_napari_viewer_proxy()
    w = BatchWidget(viewer)
    viewer.window.add_dock_widget(w, name="Batch")
    w.model_edit.setText(str(files["model"]))
    w.add_inputs([files["small"]])
    w.output_edit.setText(str(tmp_path))
    w.open_results.setChecked(os.environ.get("OPEN") == "1")
    if os.environ.get("NOPROG") == "1":
        monkeypatch.setattr(module, "progress", lambda **k: None)
    _run(w, qtbot)
    from napari._qt.qt_viewer import QtViewer
    del w
    gc.collect()
    q = list(QtViewer._instances)[0]
    for r in gc.get_referrers(q):
        print("REF", type(r), str(r)[:200])
