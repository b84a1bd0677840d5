"""Model lifecycle: labelled feedback, fine-tuning, the evaluation gate, the model registry, the schedule."""
