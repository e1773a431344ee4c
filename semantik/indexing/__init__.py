"""The worker side: arq functions, running a job, and its pipeline (scan, extract, chunk, embed, store)."""
