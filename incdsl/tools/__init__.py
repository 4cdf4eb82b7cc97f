"""The command line and the tools around the compiler: the CLI, the language server, runs,
benchmarks, weight porting."""
