"""The Discord bot (built in the bot issue)."""
