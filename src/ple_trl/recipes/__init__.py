"""The paper's recipes (`ple-trl train NAME`): one YAML file of script arguments per task."""
