import sys

from services.signer.main import main

sys.exit(main())
