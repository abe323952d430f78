"""The core model every layer may import: domain values, work-item states, the plugin
contracts (vendor transports, write-back targets) and how they are found, the one
exception hierarchy, and logging. It imports nothing else of radbridge."""
