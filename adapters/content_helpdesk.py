"""The IT help desk demo department's problems and how its rows are written; see make_datasets.py.

A problem is one *group* of rows: its questions, its steps and its expected fields. Several slugs
have two problems (a second cause of the same kind of ticket, with its own questions and steps),
so a held-out problem has unseen questions and an unseen answer but a slug the adapter has seen.
`keywords` are what relevant steps must mention (each entry; `a|b` accepts either word): they are
the `step_keywords` of the rows' `expected` object, and every entry occurs in the problem's steps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .data import InstructionRow


@dataclass(frozen=True)
class Problem:
    slug: str
    priority: str  # low | medium | high
    escalate: bool
    questions: tuple[str, ...]
    steps: tuple[str, ...]
    keywords: tuple[str, ...]


# fmt: off
PROBLEMS = (
    Problem("vpn-connection", "medium", False,
            ("I can't connect to the company VPN from home.",
             "The VPN client says 'connection failed' every time I try to connect.",
             "My VPN times out before it ever connects."),
            ("Check that your internet connection works without the VPN.",
             "Quit the VPN client completely and start it again.",
             "Sign in again with your company account and approve the MFA prompt."),
            ("vpn", "internet|connect|sign in")),
    Problem("vpn-dropping", "medium", False,
            ("The VPN keeps disconnecting every few minutes.",
             "My VPN connection drops whenever I join a video call.",
             "The VPN disconnects randomly and I lose my remote desktop session."),
            ("Use a wired connection or move closer to your Wi-Fi router.",
             "Update the VPN client from the Software Center.",
             "Reconnect and note the time of each further drop for the ticket."),
            ("vpn", "wired|wi-fi|update|reconnect")),
    Problem("password-reset", "low", False,
            ("I forgot my password.",
             "How do I reset my Windows password?",
             "I need to change my password but I don't remember the old one."),
            ("Open the self-service portal at https://password.example.com.",
             "Verify your identity with the code sent to your registered phone.",
             "Choose a new password of at least 14 characters and sign in with it."),
            ("password", "portal|reset")),
    Problem("account-locked", "medium", False,
            ("My account is locked after too many login attempts.",
             "Windows says my account has been locked out.",
             "I typed my password wrong a few times and now I'm locked out."),
            ("Wait 15 minutes for the automatic unlock.",
             "Reset your password in the self-service portal if you are unsure of it.",
             "Sign in again; if the account is still locked, reply to this ticket."),
            ("password|unlock|locked|account", "wait|reset|portal")),
    Problem("password-expired", "low", False,
            ("My password expired and I can't sign in to email.",
             "I keep getting a message that my password has expired.",
             "Outlook says my password is expired. What now?"),
            ("Sign in to the self-service portal and choose a new password.",
             "Lock and unlock your laptop so it picks up the new password.",
             "Enter the new password on your phone's mail app when it asks."),
            ("password", "portal|new password")),
    Problem("printer-offline", "low", False,
            ("The office printer shows as offline.",
             "I can't print, the printer says it's offline.",
             "My print jobs are stuck because the printer is offline."),
            ("Check that the printer is switched on and shows no error on its panel.",
             "Remove the stuck jobs from the print queue on your computer.",
             "Remove the printer and add it again from the printer list."),
            ("printer", "queue|switched on|add")),
    Problem("printer-jam", "low", False,
            ("The printer on the second floor has a paper jam.",
             "Paper keeps jamming in the printer.",
             "The printer says 'paper jam' but I can't see any paper stuck."),
            ("Switch the printer off and open every tray and door shown on its panel.",
             "Pull out any jammed paper gently in the direction of the paper path.",
             "Close all doors, switch the printer on and print a test page."),
            ("paper|jam", "printer")),
    Problem("printer-driver", "low", False,
            ("My laptop can't find the printer driver.",
             "Printing gives me garbled characters instead of my document.",
             "The printer isn't in my list of printers after the update."),
            ("Install the printer package from the Software Center.",
             "Restart your laptop.",
             "Add the printer again from the printer list and print a test page."),
            ("printer", "install|software center|add")),
    Problem("laptop-slow", "low", False,
            ("My laptop is very slow.",
             "Everything on my computer takes ages to open.",
             "My laptop fan is loud and apps freeze all the time."),
            ("Restart the laptop; if it has not been restarted for days this often helps.",
             "Close the apps you are not using and check Task Manager for high CPU use.",
             "Install pending updates from the Software Center and restart again."),
            ("restart|update", "apps|task manager|updates")),
    Problem("laptop-no-boot", "high", True,
            ("My laptop won't turn on.",
             "My laptop shows a black screen when I press the power button.",
             "My computer is stuck on the startup logo and never boots."),
            ("Connect the charger and hold the power button for 20 seconds.",
             "Disconnect the docking station and all USB devices and try again.",
             "Bring the laptop to the IT desk for a loan device while it is repaired."),
            ("power|charger", "it desk|service desk|loan")),
    Problem("laptop-battery", "low", False,
            ("My laptop battery drains in an hour.",
             "The laptop battery doesn't charge past 60 percent.",
             "My laptop dies as soon as I unplug it."),
            ("Check the battery report in the IT support app.",
             "Lower the screen brightness and close heavy apps while on battery.",
             "Book a battery replacement at the IT desk if the report shows wear."),
            ("battery", "replacement|brightness|report")),
    Problem("screen-broken", "medium", True,
            ("I dropped my laptop and the screen is cracked.",
             "My laptop screen flickers and shows coloured lines.",
             "Half of my laptop screen is black."),
            ("Stop using the laptop if glass is loose, to avoid injury.",
             "Back up any files that are not yet in OneDrive.",
             "Bring the laptop to the IT desk for a repair and a loan device."),
            ("laptop|screen", "it desk|repair")),
    Problem("email-sync", "medium", False,
            ("My email isn't syncing on my phone.",
             "New emails don't show up in Outlook.",
             "Outlook is stuck on 'updating this folder'."),
            ("Check that you are online and that Outlook shows 'Connected' at the bottom.",
             "Close Outlook and open it again.",
             "Remove and add your mail account again on your phone if it still does not sync."),
            ("outlook|mail", "online|connected|account|restart")),
    Problem("mailbox-full", "low", False,
            ("My mailbox is full and I can't send emails.",
             "Outlook says my mailbox is almost full.",
             "I get a warning that I'm over my mailbox quota."),
            ("Empty the Deleted Items and Junk folders.",
             "Move large attachments to OneDrive and delete them from the emails.",
             "Turn on the online archive in Outlook for mail older than one year."),
            ("onedrive|archive|delete|empty", "folder|attachments|mail")),
    Problem("phishing-report", "high", True,
            ("I clicked a link in a suspicious email.",
             "I think I entered my password on a fake login page.",
             "I got an email asking me to pay an urgent invoice and I opened the attachment."),
            ("Disconnect your computer from the network now.",
             "Change your password from another device in the self-service portal.",
             "Forward the email as an attachment to security@example.com and do not delete it."),
            ("password", "security|network")),
    Problem("shared-mailbox-access", "low", True,
            ("I need access to the sales shared mailbox.",
             "How do I get access to the team's shared inbox?",
             "Can I be added to the support@ shared mailbox?"),
            ("Ask the mailbox owner to approve your access in the access portal.",
             "Wait for the approval email; access is granted within one working day.",
             "Restart Outlook so the shared mailbox appears in your folder list."),
            ("access|approve", "owner|portal")),
    Problem("wifi-connection", "medium", False,
            ("My laptop can't connect to the office Wi-Fi.",
             "The Wi-Fi says 'no internet, secured'.",
             "I can't join the corporate wireless network."),
            ("Turn Wi-Fi off and on again and choose the network 'Corp-WiFi'.",
             "Forget the network and connect again with your company account.",
             "Restart the laptop and try again near a different access point."),
            ("wi-fi|network", "connect|forget|restart")),
    Problem("wifi-slow", "low", False,
            ("The Wi-Fi in the meeting room is really slow.",
             "Internet is very slow on my laptop at the office.",
             "Web pages load slowly on the guest Wi-Fi."),
            ("Run a speed test at https://speed.example.com and note the result.",
             "Move closer to an access point or use a network cable at your desk.",
             "Tell us the room or desk number so we can check the access point there."),
            ("speed|access point|cable", "test|room|desk|closer")),
    Problem("software-install", "low", True,
            ("I need Visio installed on my laptop.",
             "Can you install Python on my work computer?",
             "How do I get Adobe Acrobat Pro?"),
            ("Look for the application in the Software Center and install it from there.",
             "If it is not listed, request it in the IT portal with a business reason.",
             "Wait for your manager's approval; the installation then runs automatically."),
            ("software center|it portal", "install|request")),
    Problem("software-crash", "medium", False,
            ("Excel crashes every time I open a big file.",
             "Teams keeps closing by itself.",
             "An app freezes and then closes with an error."),
            ("Install pending updates from the Software Center.",
             "Restart the laptop and open the app again.",
             "Run the Repair option for the app in Settings > Apps if it still crashes."),
            ("update|repair|restart", "app|laptop")),
    Problem("license-expired", "medium", True,
            ("My software says the license has expired.",
             "Office shows 'unlicensed product' at the top.",
             "I get a license error when I start the design software."),
            ("Sign out of the app and sign in again with your company account.",
             "Restart the laptop so the license is checked again.",
             "Reply to this ticket with a screenshot of the error if it persists."),
            ("sign in|sign out|licen", "company account|restart|screenshot")),
    Problem("mfa-new-phone", "medium", True,
            ("I got a new phone and my authenticator app is gone.",
             "How do I move MFA to my new phone?",
             "I lost my phone and can't approve sign-ins."),
            ("Call the service desk so we can verify your identity.",
             "We reset your MFA registration after the check.",
             "Sign in and register the authenticator app on the new phone."),
            ("service desk|identity", "authenticator|register")),
    Problem("mfa-no-prompt", "medium", False,
            ("I'm not getting the MFA push notification.",
             "The authenticator app never shows the approval request.",
             "MFA prompts don't arrive on my phone."),
            ("Open the authenticator app and check that notifications are allowed.",
             "Check that the phone's date and time are set automatically.",
             "Use the six-digit code in the app instead of the push notification."),
            ("authenticator|app", "notification|time|code")),
    Problem("file-share-access", "low", True,
            ("I can't open the finance folder on the shared drive.",
             "I get 'access denied' on a network folder.",
             "I need access to the project share on the S: drive."),
            ("Ask the folder owner to approve your access in the access portal.",
             "Sign out and in again after the approval email arrives.",
             "Open the folder again from File Explorer."),
            ("access|approv", "owner|portal")),
    Problem("headset-audio", "low", False,
            ("People can't hear me in Teams calls.",
             "My headset microphone doesn't work.",
             "I hear no sound from my headset in meetings."),
            ("Select the headset as microphone and speaker in the app's device settings.",
             "Unplug the headset, plug it into another USB port and try again.",
             "Make a test call to check the microphone and speaker."),
            ("headset|microphone", "settings|port|test")),
    Problem("docking-monitor", "low", False,
            ("My external monitor isn't detected through the dock.",
             "The second screen stays black when I dock my laptop.",
             "My docking station stopped working."),
            ("Unplug the dock's power for ten seconds and plug it in again.",
             "Check that the monitor cable is firm and the right input is selected.",
             "Install the dock firmware update from the Software Center."),
            ("dock|monitor|cable", "plug|firmware|input")),
    Problem("device-lost", "high", True,
            ("I left my work laptop on the train.",
             "My work phone was stolen.",
             "I can't find my company laptop after the conference."),
            ("Report the loss to the service desk by phone right away.",
             "We lock and wipe the device remotely.",
             "Change your password and report the theft to the police if it was stolen."),
            ("service desk|report", "lock|wipe|password")),
    # Second problems under the same slugs: another cause, other questions, other steps.
    Problem("vpn-connection", "medium", False,
            ("The VPN client says my certificate is not valid.",
             "The VPN app won't even open on my laptop.",
             "I get 'certificate expired' when the VPN tries to connect."),
            ("Check that the date and time on your laptop are set automatically.",
             "Install the latest VPN client from the Software Center.",
             "Restart the laptop and connect to the VPN again."),
            ("vpn", "install|update|date")),
    Problem("password-reset", "low", True,
            ("The password reset code never arrives on my phone.",
             "The self-service portal doesn't send me a verification code.",
             "I changed my phone number and can't get the reset code."),
            ("Check that the phone number registered in the self-service portal is current.",
             "Call the service desk so we can verify your identity another way.",
             "Set a new password with the one-time reset link we then send you."),
            ("password|reset", "phone|service desk|identity")),
    Problem("printer-driver", "low", False,
            ("Printing from my Mac fails with 'filter failed'.",
             "My MacBook adds the printer but nothing ever comes out.",
             "The print dialog on my Mac says the printer driver is missing."),
            ("Remove the printer in System Settings > Printers & Scanners.",
             "Install the Mac printer package from the Self Service app.",
             "Add the printer again and print a test page."),
            ("printer", "install|add|remove")),
    Problem("laptop-slow", "low", False,
            ("My laptop says the disk is almost full and everything is slow.",
             "I get 'low disk space' warnings all day.",
             "My C: drive is nearly full and apps won't save anything."),
            ("Empty the Recycle Bin and the Downloads folder.",
             "Run Disk Cleanup and include system files.",
             "Move large files to OneDrive and set them to online-only."),
            ("disk|files|onedrive", "empty|clean|move")),
    Problem("laptop-no-boot", "high", True,
            ("My laptop asks for a BitLocker recovery key at startup.",
             "My laptop shows a blue screen and restarts over and over.",
             "After the update my computer keeps restarting in a loop."),
            ("Do not reset or reinstall the laptop yourself.",
             "Call the service desk for your recovery key or a remote check.",
             "Bring the laptop to the IT desk if it still does not start."),
            ("service desk|it desk", "recovery|remote|reset")),
    Problem("email-sync", "medium", False,
            ("My calendar on my phone doesn't show new meetings.",
             "Meetings I accept in Outlook don't appear on my phone.",
             "My Outlook calendar is out of date on my iPad."),
            ("Open the calendar app's settings and check that your work calendar is switched on.",
             "Refresh the calendar or restart the calendar app.",
             "Remove and add your work account again if meetings are still missing."),
            ("calendar|account", "refresh|restart|remove")),
    Problem("phishing-report", "high", True,
            ("Someone called me pretending to be IT and asked for my MFA code.",
             "I got a text message with a link to 'verify my company account' and tapped it.",
             "A caller asked me to install remote access software and I did."),
            ("Stop all contact with the caller or sender and share no codes.",
             "Change your password in the self-service portal now.",
             "Report the call or message to security@example.com with the time and number."),
            ("password", "security|report")),
    Problem("wifi-connection", "medium", False,
            ("My phone can't connect to the corporate Wi-Fi.",
             "My tablet keeps asking for a certificate when joining Corp-WiFi.",
             "The Wi-Fi on my phone says 'authentication problem'."),
            ("Forget the 'Corp-WiFi' network on the phone.",
             "Connect again, accept the company certificate and sign in with your company account.",
             "Install the Wi-Fi profile from the Company Portal app if it still fails."),
            ("wi-fi|network", "connect|forget|profile")),
    Problem("software-crash", "medium", False,
            ("The browser closes itself whenever I open our intranet.",
             "Chrome crashes as soon as I start it.",
             "Edge freezes and then shuts down."),
            ("Clear the browser's cache and cookies.",
             "Turn off browser extensions and start the browser again.",
             "Reset the browser settings, or reinstall it from the Software Center."),
            ("browser", "cache|extension|reset|reinstall")),
    Problem("mfa-no-prompt", "medium", False,
            ("The six-digit code from my authenticator is always rejected.",
             "Sign-in says my verification code is wrong.",
             "My MFA codes don't work when I log in."),
            ("Turn on automatic date and time in the phone's settings.",
             "Wait for a fresh code and type it before it changes.",
             "Call the service desk to register the authenticator again if codes still fail."),
            ("code|authenticator", "time|fresh|register")),
    Problem("docking-monitor", "low", False,
            ("My external monitor flickers when I'm docked.",
             "The second screen has the wrong resolution and everything is blurry.",
             "My monitor goes black for a second every few minutes."),
            ("Replace the monitor cable with another one.",
             "Set the recommended resolution in Display settings.",
             "Install the graphics driver update from the Software Center."),
            ("monitor|cable|display", "resolution|driver|replace")),
    Problem("file-share-access", "low", True,
            ("I can't open our team's SharePoint site.",
             "SharePoint says I need permission to access this site.",
             "I need edit rights on the marketing team's SharePoint files."),
            ("Select 'Request access' on the page, or ask the site owner to add you.",
             "Wait for the owner's approval email.",
             "Open the site again in a private browser window after the approval."),
            ("access|approv", "owner")),
    Problem("headset-audio", "low", False,
            ("My Bluetooth headset won't pair with my laptop.",
             "My wireless headset keeps cutting out in calls.",
             "The headset connects to my phone but not to my laptop."),
            ("Charge the headset, then switch it off and on again.",
             "Remove the headset from the Bluetooth devices list and pair it again.",
             "Use the headset's USB dongle instead of the laptop's own Bluetooth."),
            ("headset", "pair|bluetooth|charge|dongle")),
)
# fmt: on


# --- rows ----------------------------------------------------------------------------------------

GREETINGS = ("", "Hi, ", "Hello, ", "Quick question: ", "Help! ", "Good morning. ")
DETAILS = (
    "", " I'm on a Windows laptop.", " I'm using a MacBook.", " This started after the last update.",
    " It worked fine yesterday.", " I'm working from home today.", " I already restarted once.",
)  # fmt: skip
KEEP_CAPITAL = (
    "I ",
    "I'",
    "Windows",
    "Outlook",
    "Excel",
    "Teams",
    "MFA",
    "Office",
    "Paper",
    "Chrome",
    "Edge",
    "SharePoint",
)
URGENT = (" I have a client meeting in ten minutes.", " I have a deadline this afternoon.")
TEAM_WIDE = (" The whole team has the same problem.", " Everyone on our floor is affected.")
PEOPLE = ("Ana", "Ben", "Chen", "Dara", "Emil", "Farah", "Gus", "Hana", "Ivo", "Jade", "Kofi", "Lena")
TEAMS = ("Sales", "Finance", "HR", "Marketing", "Engineering", "Support", "Legal", "Operations")
TRIAGE_ASKS = (
    "Create a help-desk ticket for this message from {person} in {team}.",
    "Triage the request below from {person} ({team}).",
    "{person} from {team} sent us this. Write the ticket.",
    "Turn this message from {person} in {team} into a support ticket.",
)
# Asked only of held-out problems: the held-out rows also test phrasings never trained on.
HELD_OUT_ASKS = (
    "New message in the support inbox ({person}, {team}). Please ticket it.",
    "Log this for the service desk. It came from {person} in {team}.",
)
_LEVELS = ("low", "medium", "high")


def ticket_fields(problem: Problem, urgent: bool, team_wide: bool) -> dict[str, str]:
    """Priority is the problem's own, one level up when urgent, high (and escalated) when team-wide."""
    priority = problem.priority
    if team_wide:
        priority = "high"
    elif urgent:
        priority = _LEVELS[min(_LEVELS.index(priority) + 1, 2)]
    escalate = "yes" if problem.escalate or team_wide else "no"
    return {"category": problem.slug, "priority": priority, "escalate": escalate}


def ticket(problem: Problem, urgent: bool, team_wide: bool) -> str:
    fields = ticket_fields(problem, urgent, team_wide)
    steps = "\n".join(f"{number}. {step}" for number, step in enumerate(problem.steps, start=1))
    return (
        f"TICKET: {fields['category']}\nPRIORITY: {fields['priority']}\nSTEPS:\n{steps}\n"
        f"ESCALATE: {fields['escalate']}"
    )


def helpdesk_row(rng: random.Random, problem: Problem, group: str, held_out: bool) -> InstructionRow:
    question = rng.choice(problem.questions)
    mood = rng.random()
    urgent, team_wide = mood < 0.15, 0.15 <= mood < 0.3
    extra = rng.choice(URGENT) if urgent else rng.choice(TEAM_WIDE) if team_wide else ""
    greeting = rng.choice(GREETINGS)
    if greeting.endswith(", ") and not question.startswith(KEEP_CAPITAL):
        question = question[0].lower() + question[1:]
    message = f"{greeting}{question}{rng.choice(DETAILS)}{extra}"
    expected = ticket_fields(problem, urgent, team_wide) | {"step_keywords": list(problem.keywords)}
    response = ticket(problem, urgent, team_wide)
    if rng.random() < 0.7:
        return InstructionRow(message, "", response, "open_qa", group, expected)
    asks = TRIAGE_ASKS + HELD_OUT_ASKS if held_out else TRIAGE_ASKS
    ask = rng.choice(asks).format(person=rng.choice(PEOPLE), team=rng.choice(TEAMS))
    return InstructionRow(ask, message, response, "classification", group, expected)


# The help desk's preference: the ticket says how to reopen it, in varying words, as a step of its
# own or at the end of the last step; the last two wordings appear only in the held-out pairs.
REOPEN_STEPS = (
    "Reply to this ticket if the problem comes back.",
    "If it happens again, reopen this ticket by replying to it.",
    "Still broken after these steps? Answer this ticket and we pick it up again.",
    "Write back here if the issue returns and we reopen the ticket.",
    "Should the problem return, reply to this ticket instead of opening a new one.",
    "If nothing helped, reply here and the ticket reopens.",
    "Let us know by replying to this ticket if the fault comes back.",
    "Come back to this ticket with a reply if the trouble starts again.",
)
HELD_OUT_REOPEN = 2


def helpdesk_preferred(row: InstructionRow, rng: random.Random, held_out: bool) -> str:
    lines = row.response.split("\n")
    steps = lines[3:-1]
    pool = REOPEN_STEPS[-HELD_OUT_REOPEN:] if held_out else REOPEN_STEPS[:-HELD_OUT_REOPEN]
    reopen = rng.choice(pool)
    if rng.random() < 0.7:
        return "\n".join([*lines[:-1], f"{len(steps) + 1}. {reopen}", lines[-1]])
    last = steps[-1].rstrip(".")
    merged = f"{last}; {reopen[0].lower()}{reopen[1:]}"
    return "\n".join([*lines[:3], *steps[:-1], merged, lines[-1]])


def helpdesk_rejected(row: InstructionRow, rng: random.Random) -> str:
    """A plausible answer to the row that breaks the ticket format."""
    lines = row.response.split("\n")
    slug, priority, escalate = lines[0][8:], lines[1][10:], lines[-1][10:]
    steps = [line.split(". ", 1)[1] for line in lines[3:-1]]
    variant = rng.randrange(5)
    if variant == 0:  # free prose
        joined = ". Then ".join(step[0].lower() + step[1:].rstrip(".") for step in steps)
        tail = " If that doesn't help, IT will take a closer look." if escalate == "yes" else ""
        topic = slug.replace("-", " ")
        return f"Sorry to hear that! This looks like a {topic} issue. {joined[0].upper()}{joined[1:]}.{tail}"
    if variant == 1:  # ESCALATE line missing
        return "\n".join(lines[:-1])
    if variant == 2:  # wrong order
        return "\n".join([lines[1], lines[0], *lines[2:]])
    if variant == 3:  # bullets instead of numbered steps
        return "\n".join([*lines[:3], *(f"- {step}" for step in steps), lines[-1]])
    return (
        f"Ticket: {slug}\nPriority: {priority.capitalize()}\n"
        + "\n".join(f"Step {number}: {step}" for number, step in enumerate(steps, start=1))
        + f"\nEscalate: {escalate}"
    )
