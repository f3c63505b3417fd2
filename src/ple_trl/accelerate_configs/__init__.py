"""accelerate launch configurations shipped with ple-trl (`ple-trl train --accelerate_config NAME`)."""
