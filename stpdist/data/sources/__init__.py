"""One reader per raw format; each builds a `convert.Source`."""
