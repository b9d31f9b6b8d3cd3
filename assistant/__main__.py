import sys

from splice.assistant.cli import main

sys.exit(main())
