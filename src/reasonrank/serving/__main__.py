from reasonrank.serving.commands import main

main()
