from scircuits.cli import main

main()
