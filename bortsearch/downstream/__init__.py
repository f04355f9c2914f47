"""Downstream: fine-tuning on GLUE-style tasks, and the student-vs-teacher GLUE table."""
