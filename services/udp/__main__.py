from services.udp.main import main

raise SystemExit(main())
