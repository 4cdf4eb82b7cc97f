"""The IR: frozen nodes built from the AST, with the names and arithmetic they carry."""
