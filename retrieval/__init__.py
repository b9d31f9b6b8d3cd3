"""Repository context retrieval: tree-sitter index, import graph, context assembly (issue 5)."""
