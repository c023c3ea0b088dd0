"""Pictures and pages for people: colours, overlays, figures, HTML reports."""
