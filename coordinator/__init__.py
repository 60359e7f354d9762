"""The coordinator: the one process that owns the lobby and orders every change."""
