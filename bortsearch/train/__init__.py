"""Training: the loss and the jitted step (`step`), the resumable training loop
(`fit`), the maximum point trained as a teacher (`teacher`), and the chosen
student's export and distillation pretraining (`student`)."""
