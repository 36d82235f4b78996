from fer_core.cli import main

main()
