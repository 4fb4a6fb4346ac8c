from bundler.cli.main import main

main()
