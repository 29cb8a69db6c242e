"""The inference stage: answer prompts with trained runs. `Assistant` (tasktune.Assistant) opens runs and answers;
for prefix runs, many share one base (bank) and decode together (engine: continuous batching over slots).
Evaluation, chat and the server all answer through here."""
