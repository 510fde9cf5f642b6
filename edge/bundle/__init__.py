"""The model bundle: the folder and its manifest, archives of it, install and rollback on the box."""
