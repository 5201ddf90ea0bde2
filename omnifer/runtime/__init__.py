"""How the process runs: progress reporting, native heap hygiene, tables for the terminal."""
