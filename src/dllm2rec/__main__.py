from dllm2rec.cli import main

main()
