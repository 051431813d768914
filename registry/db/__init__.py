"""Database layer: ORM tables, engine set-up, migrations and opening a database ready for use
(``prepare``); part of the base package."""
