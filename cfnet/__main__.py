from cfnet.cli.main import main

main()
