"""One cog per feature; each module ends in `async def setup(bot)`."""

EXTENSIONS = (
    "bot.cogs.home",
    "bot.cogs.ask",
    "bot.cogs.conversations",
    "bot.cogs.feedback",
    "bot.cogs.admin",
    "bot.cogs.review",
    "bot.cogs.helpers",
    "bot.cogs.learning",
)
