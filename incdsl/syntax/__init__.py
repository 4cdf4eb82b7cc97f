"""The spec language: its Lark grammar's parser, the typed AST, the formatter."""
