"""Quality: question-set evaluation, the reindex gate, and coverage gaps."""
