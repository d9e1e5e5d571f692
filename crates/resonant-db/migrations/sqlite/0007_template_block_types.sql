-- Templates may configure any block type the engine runs. The CHECK listed five of the
-- eleven, a copy of the engine's list that fell behind; the application checks the type
-- (`BlockKind`) on the way in and on the way out, so the list lives in one place.
--
-- SQLite cannot drop a CHECK, so the table is rebuilt (sqlite.org/lang_altertable.html).
-- The migrator runs this in a transaction, where `PRAGMA foreign_keys = OFF` does nothing,
-- and dropping the old table deletes its rows first, which cascades to `template_downloads`:
-- those rows are kept aside and put back once the new table has the old name.
CREATE TABLE block_templates_new (
    id TEXT PRIMARY KEY,
    created_by TEXT NOT NULL REFERENCES users (id),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    category TEXT NOT NULL,
    block_type TEXT NOT NULL,
    config TEXT NOT NULL,
    is_public BOOLEAN NOT NULL DEFAULT 0,
    downloads BIGINT NOT NULL DEFAULT 0,
    rating REAL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
INSERT INTO block_templates_new (id, created_by, name, description, category, block_type, config,
    is_public, downloads, rating, created_at, updated_at)
SELECT id, created_by, name, description, category, block_type, config,
    is_public, downloads, rating, created_at, updated_at FROM block_templates;
CREATE TEMP TABLE template_downloads_kept AS SELECT template_id, user_id, downloaded_at FROM template_downloads;
DROP TABLE block_templates;
ALTER TABLE block_templates_new RENAME TO block_templates;
INSERT INTO template_downloads (template_id, user_id, downloaded_at)
SELECT template_id, user_id, downloaded_at FROM template_downloads_kept;
DROP TABLE template_downloads_kept;
CREATE INDEX IF NOT EXISTS block_templates_by_creator ON block_templates (created_by);
CREATE INDEX IF NOT EXISTS block_templates_by_category ON block_templates (category);
CREATE INDEX IF NOT EXISTS block_templates_by_public ON block_templates (is_public);
CREATE INDEX IF NOT EXISTS block_templates_by_downloads ON block_templates (downloads);
