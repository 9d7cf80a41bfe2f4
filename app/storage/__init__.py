"""Storage: the data model, the database engine and the migrations."""
