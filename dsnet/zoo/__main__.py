from dsnet.zoo.loader import main

raise SystemExit(main())
