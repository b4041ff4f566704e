"""napari dock widgets: the only Qt in napari-msd.

Each dock is one module, imported by napari through the manifest (``napari.yaml``) when it is opened, never at
package import. State shared by docks lives in :mod:`napari_msd._widgets.session`.
"""
