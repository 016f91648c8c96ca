from services.tcp.main import main

raise SystemExit(main())
