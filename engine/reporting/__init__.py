"""How the report looks: documents, HTML/Markdown rendering, plots."""
