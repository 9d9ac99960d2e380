using FateLlm.Host.Cli;

return CliApp.Run(args);
