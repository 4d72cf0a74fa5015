"""interventions: interchange / criss-cross patching, ablation, last-token patching and direction amplification."""
