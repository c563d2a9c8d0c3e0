"""The Discord bot: slash commands, streamed answers, feedback and admin tools over rag_core."""
