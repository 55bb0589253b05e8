"""Training the memory model on recorded runs (SPEC 4): samples, the action reward, SFT and GRPO stages."""
