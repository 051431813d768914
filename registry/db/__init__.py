"""Database layer: ORM tables, engine set-up and migrations."""
