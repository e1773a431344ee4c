"""One module per family of formats, each turning a file's bytes into ``Section`` s: text with where
it is in the document (page, slide, sheet, heading path). ``semantik.indexing.extract`` picks the
module by suffix; every module parses untrusted bytes and runs only in the extraction processes."""
