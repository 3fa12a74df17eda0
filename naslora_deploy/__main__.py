"""``python -m naslora_deploy`` runs the command line."""

import sys

from naslora_deploy.cli import main

sys.exit(main())
