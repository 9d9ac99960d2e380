using Akka.Configuration;
using FateLlm.Actors.Board;
using FateLlm.Actors.Jobs;
using FateLlm.Host.Board;
using OpenQA.Selenium;
using OpenQA.Selenium.Chrome;
using OpenQA.Selenium.Support.UI;
using Xunit;
using Xunit.Abstractions;

namespace FateLlm.Tests;

/// <summary>
/// The live board in a real browser (Debian's chromium, headless, through chromium-driver) during an in-process job:
/// a party goes from training to done, a killed party is shown as dropped, the loss chart gains points, all without a
/// reload. The screenshot is kept as a test artifact (<c>artifacts/board-during-job.png</c> beside the test binaries,
/// or under <c>$FATELLM_ARTIFACTS</c>).
/// </summary>
[Trait(Tier.Key, Tier.Process)]
[Collection(Tier.InProcess)] // its federation trains in this process
public class BoardBrowserSpec(ITestOutputHelper output)
{
    static readonly TimeSpan Step = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task The_board_follows_a_running_job_live_in_a_headless_browser()
    {
        const string watched = "animal", victim = "food";
        var g = FederationFixture.Prepare();
        var feed = new BoardFeed();
        // The victim's node dies as kill -9 looks to the others once it has taken round 2's work.
        var crash = ConfigurationFactory.ParseString($$"""
            fate-llm.fault-injection.points = [{ at = party.fit, org = {{victim}}, round = 2, action = terminate }]
            fate-llm.round.absent-grace = 4s
            """);
        await using var fed = await FederationFixture.Start(g, crash, board: feed);
        await using var web = await NodeWeb.Parse("127.0.0.1:0", null, null, null).StartAsync(feed, output.WriteLine);
        using var browser = Browser();
        browser.Navigate().GoToUrl(web.Server!.Address);
        Wait(browser, "the event stream connects", d => d.FindElement(By.Id("conn")).GetDomAttribute("data-state") == "live");
        var version = long.Parse(browser.FindElement(By.TagName("body")).GetDomAttribute("data-version")!);

        // Three rounds with a quorum of two: the party killed in round 2 is dropped, the others carry the round.
        var spec = FederationFixture.Job(g, "board", rounds: 3, quorum: 2, epochs: 2);
        Assert.IsType<JobAccepted>(await fed.SubmitAsync(spec));
        Wait(browser, $"{watched} training in round 1", d => PartyState(d, watched) == "training");
        Wait(browser, $"{watched} done in round 1", d => PartyState(d, watched) == "done");
        Wait(browser, "the loss chart's first point", d => ChartPoints(d, "loss") >= 1);

        // Dropped while round 2 is in flight, or in round 2's row once it completed (both can land in one push).
        Wait(browser, $"{victim} dropped in round 2", d => (RoundShown(d) == 2 && PartyState(d, victim) == "dropped") || RoundOutcome(d, 2, victim) == "dropped");
        Wait(browser, "round 2 completed without the victim", d => RoundOutcome(d, 2, victim) == "dropped" && RoundOutcome(d, 2, watched) == "done");
        // The page re-renders on every push, so every read goes through a wait that retries a stale element.
        Wait(browser, "why the victim was dropped", d => d.FindElement(By.CssSelector($"article[data-job='board'] tr[data-round='2'] [data-party='{victim}']"))
            .GetDomAttribute("title")?.Contains("left") == true);
        Wait(browser, "the loss chart's second point", d => ChartPoints(d, "loss") >= 2);
        Wait(browser, "animal's node among the members", d => d.FindElements(By.CssSelector("#members tr[data-member]")).Any(r => r.Text.Contains("org-animal")));

        var shot = Screenshot(browser);
        output.WriteLine($"screenshot: {shot}");
        Assert.True(new FileInfo(shot).Length > 10_000);
        // Everything came over the one event stream: the page was never reloaded, and it saw many snapshots.
        Assert.True(long.Parse(browser.FindElement(By.TagName("body")).GetDomAttribute("data-version")!) > version + 5);
        Assert.Equal(web.Server.Address.ToString(), browser.Url);

        var status = await fed.WaitAsync(spec.JobId, Step);
        Assert.Equal(JobState.Completed, status.State);
        Assert.False(status.Rounds[1].Parties.Single(p => p.Org == victim).Succeeded);
    }

    static string? PartyState(IWebDriver d, string org) =>
        d.FindElements(By.CssSelector($"article[data-job='board'] tr[data-party='{org}']")).FirstOrDefault()?.GetDomAttribute("data-state");

    static string? RoundOutcome(IWebDriver d, int round, string org) =>
        d.FindElements(By.CssSelector($"article[data-job='board'] tr[data-round='{round}'] [data-party='{org}']")).FirstOrDefault()?.GetDomAttribute("data-state");

    static int RoundShown(IWebDriver d) =>
        d.FindElements(By.CssSelector("article[data-job='board'] h3")).Select(h => h.Text).FirstOrDefault(t => t.StartsWith("Round ")) is { } t
            ? int.Parse(t.Split(' ')[1]) : 0;

    static int ChartPoints(IWebDriver d, string chart) =>
        d.FindElements(By.CssSelector($"article[data-job='board'] svg[data-chart='{chart}']")).FirstOrDefault()?.GetDomAttribute("data-points") is { } n ? int.Parse(n) : 0;

    void Wait(IWebDriver d, string what, Func<IWebDriver, bool> until)
    {
        var wait = new WebDriverWait(d, Step) { PollingInterval = TimeSpan.FromMilliseconds(100), Message = what };
        wait.IgnoreExceptionTypes(typeof(StaleElementReferenceException), typeof(NoSuchElementException));
        try { wait.Until(until); }
        catch (WebDriverTimeoutException)
        {
            var shot = Screenshot(d);
            throw new Xunit.Sdk.XunitException($"the board never showed {what} within {Step.TotalSeconds} s (screenshot {shot}); it showed:\n" +
                d.FindElement(By.TagName("main")).Text);
        }
        output.WriteLine($"seen: {what}");
    }

    static string Screenshot(IWebDriver d)
    {
        var dir = Environment.GetEnvironmentVariable("FATELLM_ARTIFACTS") ?? Path.Combine(AppContext.BaseDirectory, "artifacts");
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, "board-during-job.png");
        ((ITakesScreenshot)d).GetScreenshot().SaveAsFile(path);
        return path;
    }

    /// <summary>Debian's chromium and chromium-driver (build/setup.sh installs them), headless; never a downloaded browser.</summary>
    static ChromeDriver Browser()
    {
        const string chromium = "/usr/bin/chromium", driver = "/usr/bin/chromedriver";
        if (!File.Exists(chromium) || !File.Exists(driver))
            throw new InvalidOperationException($"{chromium} and {driver} are needed (apt-get install chromium chromium-driver; build/setup.sh does)");
        var options = new ChromeOptions { BinaryLocation = chromium };
        options.AddArguments("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100");
        var service = ChromeDriverService.CreateDefaultService(Path.GetDirectoryName(driver)!, Path.GetFileName(driver));
        service.SuppressInitialDiagnosticInformation = true;
        service.HideCommandPromptWindow = true;
        return new ChromeDriver(service, options, TimeSpan.FromSeconds(60));
    }
}
