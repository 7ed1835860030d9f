from convlens.apps.cli import main

main()
