"""Every command line: each maps its own flags onto app.Options and runs one Service."""
