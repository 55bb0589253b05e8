from comem_cli.cli import main

main()
