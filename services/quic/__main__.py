from services.quic.main import main

raise SystemExit(main())
