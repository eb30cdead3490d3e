"""The MAS orchestrator's part of myca-ops: /api/myca/status, collectors, migrations."""
