; Inno Setup 6 script for Control Room on Windows (x64).
; Build the bundle first, then the installer, from the project root on a Windows runner:
;   .venv\Scripts\pyinstaller --noconfirm --clean packaging\controlroom.spec
;   iscc /DAppVersion=0.1.0 packaging\windows\controlroom.iss
; The installer is written to dist\ControlRoom-<version>-setup.exe.

#ifndef AppVersion
  #error Pass the version: iscc /DAppVersion=X.Y.Z (app\__init__.py __version__)
#endif

[Setup]
AppId={{6F1C2B7E-3C54-4D0F-9E8A-3B2F0C6D7A41}
AppName=Control Room
AppVersion={#AppVersion}
AppPublisher=Control Room maintainers
DefaultDirName={autopf}\Control Room
DefaultGroupName=Control Room
DisableProgramGroupPage=yes
; Per-user install without admin rights unless the operator chooses all users.
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
SourceDir=..\..
OutputDir=dist
OutputBaseFilename=ControlRoom-{#AppVersion}-setup
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern
UninstallDisplayIcon={app}\controlroom.exe

[Files]
Source: "dist\controlroom\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{autoprograms}\Control Room"; Filename: "{app}\controlroom.exe"; Parameters: "ui --demo-if-empty"
Name: "{autodesktop}\Control Room"; Filename: "{app}\controlroom.exe"; Parameters: "ui --demo-if-empty"; Tasks: desktopicon

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Run]
Filename: "{app}\controlroom.exe"; Parameters: "ui --demo-if-empty"; Description: "{cm:LaunchProgram,Control Room}"; Flags: nowait postinstall skipifsilent
