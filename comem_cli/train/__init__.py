"""Training the memory model on recorded runs (docs/design.md, section 6): samples, the action reward, SFT and GRPO stages."""
