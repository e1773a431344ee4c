"""Where state lives: SQLite (jobs, files, collections, documents) and the vectors in Qdrant."""
