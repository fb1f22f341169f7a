from maskprobe.cli import main

main()
